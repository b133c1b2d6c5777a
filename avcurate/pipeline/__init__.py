"""The runners: recipes, the stage registry, the local and Ray runners, progress, dry runs."""
