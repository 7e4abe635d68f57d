"""The training engine: state, the pure steps, the loop and its validation. It is handed an
assembled run (selffb/assemble) and knows no task, model kind, evaluator or mode."""
