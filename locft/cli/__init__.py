"""The `locft` command line: a click group, one module per noun, loaded lazily."""
