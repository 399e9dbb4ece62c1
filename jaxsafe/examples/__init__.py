"""Small, complete examples of the library's contracts (each one is a tested worked example in docs/)."""
