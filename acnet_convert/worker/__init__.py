"""The supervised child (`python -m acnet_convert.worker`): runs one command's work (the library
functions in `commands`) on untrusted files, in a process of its own, and reports everything to
the command process over a pipe (`common.protocol`). Imports anything below it; nothing imports
it: the command process starts it by name."""
