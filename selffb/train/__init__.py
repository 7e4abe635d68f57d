"""Generic training: config checks, setup, state, the pure steps and the loop; it reaches model
kinds and tasks only through the registries."""
