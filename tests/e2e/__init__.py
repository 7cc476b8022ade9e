"""End-to-end tests: real QEMU, spice-server and spice-gtk on 127.0.0.1."""
