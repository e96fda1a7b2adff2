"""L7: the `reops` launcher (click), one package."""
