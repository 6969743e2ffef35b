"""The /pinwatch slash command: parse its text (pure), answer it, and its two transports."""
