"""The seed README's snippets as runnable files; importable as ``examples.app`` etc."""
