"""Worker dialects: sans-IO parsers, bytes in and signals out, in the style of h11 and wsproto."""
