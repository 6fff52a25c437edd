"""The norm comparison's read side (`cli.py compare` runs it, `common.compare_folder` is its folder)."""
