"""Images in and out: reading and writing images, publishing files, batch runs, the Pillow and
imageio plugins."""
