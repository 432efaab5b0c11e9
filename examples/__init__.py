"""A demo feature slice: a shop's image and notification jobs, events and schedules."""
