"""Redis: the public read model (key names, Lua scripts, the view, rebuild)."""
