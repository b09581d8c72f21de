-- Workers now store the Grad-CAM evidence map itself: an 8-bit greyscale PNG
-- of the model's feature grid (7 x 7 for the 224-pixel model), a few hundred
-- bytes. Hubs paint it over the photo when someone asks and keep the result.
-- heatmap_png stays for the analyses stored, ready painted, before this.
ALTER TABLE analyses ADD COLUMN heatmap_map bytea;
