"""The base every layer stands on: the user-error type, atomic files, the validated config and the
command-line edge. Imports nothing of the project."""
