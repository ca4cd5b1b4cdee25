"""The loop: production feedback -> harvest -> retrain -> gate -> hot swap (see driver)."""
