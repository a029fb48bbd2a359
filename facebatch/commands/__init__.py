"""Small subcommands that need no Ray."""
