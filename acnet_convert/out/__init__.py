"""OUT/'s owner: the file names, the manifest, inference.yml, where a command may write, and the
staging folder committed all at once. May import `read` (the restricted unpickler) and
`common`; never Paddle."""
