"""Small helpers shared by the package's modules (file writing, ...)."""
