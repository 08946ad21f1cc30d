"""What each resource's handlers do, one module per kind; edgefleet.operator.main registers them."""
