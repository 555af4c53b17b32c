"""Deployment to microcontrollers: the typed graph as a self-contained C project, run and measured.

- :mod:`bitsound.deploy.plan`: fused steps, buffer lifetimes, one static arena;
- :mod:`bitsound.deploy.codegen`: the C project (weights, arena, straight-line kernel calls,
  the recipe's front end in C, harness, Makefile, README);
- :mod:`bitsound.deploy.qemu`: building it (host compiler or arm-none-eabi-gcc) and running it
  (natively or in ``qemu-system-arm -M mps2-an386``), comparing with the host engine;
- :mod:`bitsound.deploy.report`: flash, RAM and instruction counts from the image and the run;
- :mod:`bitsound.deploy.workflow` and :mod:`bitsound.deploy.cli`: ``bitsound deploy``.

The C front end the projects compile is the host engine's (``bitsound/engine/frontend.c``, its
tables from :mod:`bitsound.engine.frontend`).
"""
