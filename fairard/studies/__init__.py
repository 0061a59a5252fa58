"""One module per notebook: ``fairard.studies.<notebook>`` holds that notebook's study."""
