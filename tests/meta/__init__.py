"""Meta-tests of the suite and the repository: imports, safety, docs' results, --help, the corpus self-check."""
