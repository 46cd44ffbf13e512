"""Running as a service: health HTTP, systemd notify, logs, progress, signals."""
