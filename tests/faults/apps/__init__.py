"""Small Otter services that the fault tests run as real worker processes."""
