"""Raw course-layout reading, WebDataset shard building and the streaming loader."""
