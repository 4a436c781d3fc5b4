"""The probe: run a scenario as a tiny guest on /dev/kvm and compare with the model.

``kvm_api`` (ioctls and structs from the uapi headers), ``guest`` (memory,
page tables, GDT), ``program`` (scenario events as instruction bytes),
``stats`` (the binary stats fd), ``probe`` (run, observe, predict, compare),
``cli`` (the ``probe`` subcommand).  See docs/probe.md.
"""
