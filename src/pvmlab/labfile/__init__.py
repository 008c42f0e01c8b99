"""Labs as code: a TOML file that declares a provisioner, its distros and its machines."""
