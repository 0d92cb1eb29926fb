"""The engine core: model, config, plugin interfaces and manager, runtime, tracking."""
