"""Training sets: one asset per spec in trainsets/, built by hub.trainset.build."""
