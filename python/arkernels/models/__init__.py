"""Model assemblies built on arkernels ops (added with the ops they need)."""
