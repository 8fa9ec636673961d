"""Client trainers: what a ClientApp does with a train or evaluate message."""
