"""What every part shares: params, paths, errors, files written whole, devices and the stage wrapper."""
