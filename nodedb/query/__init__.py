"""Query processing: the request API every host serves, and how requests are carried out."""
