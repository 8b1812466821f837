"""Small helpers every stage uses: the one error type, printable text, quiet Paddle imports,
regular-file opening, signal handling. Imports nothing from the package."""
