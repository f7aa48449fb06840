"""Everything that talks to a server or a person."""
