"""Fast tests of the supervision core on a fake process factory (see fakes.py)."""
