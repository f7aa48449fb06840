"""What each event means to a reader: pure mappings, testable without servers."""
