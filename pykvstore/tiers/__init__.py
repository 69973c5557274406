"""Where chunk bytes live: host memory (tiers/host.py) in front of the disk bucket (tiers/disk.py).

Tiers store and fetch bytes; they never decide what to evict (policy.py does).
"""
