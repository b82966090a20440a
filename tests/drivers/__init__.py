"""Real drivers through pgtenant, in both pool modes: what each one sends, and that it
stays confined to its tenant. See docs/drivers.md for the matrix these tests back."""
