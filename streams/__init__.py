"""WardWatch package."""
