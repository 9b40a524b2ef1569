"""Live front publishing: a refresh reads every run, so its cost grows with the sweep; the
publisher spaces its refreshes so they never take more than their share of the driver's time."""
from carvelab.trials.sweep.callbacks import FrontPublisher


def test_refreshes_wait_at_least_every_s_and_keep_to_their_share_of_the_time():
    pub = FrontPublisher(every_s=20.0, share=0.1)
    pub.published_at, pub.dirty = 100.0, True
    assert not pub.due(119.0) and pub.due(120.0)       # a fast refresh: every 20 s
    pub.took_s = 5.0                                    # a slow one: 5 s of refresh, then 45 s of sweep
    assert not pub.due(144.0) and pub.due(145.0)
    pub.dirty = False
    assert not pub.due(1000.0)                          # nothing new recorded: nothing to refresh
