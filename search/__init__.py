"""Search: the space, the study, reports and export. Turns Optuna trials into TrainConfigs."""
