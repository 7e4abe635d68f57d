"""Run assembly: from a config to the assembled run (setup.Setup), once, with every problem
reported together before anything is written (checks, ranges, init_from); and whether a saved
run's config still fits (resume). Above the engine (selffb/train), which is handed the result."""
