"""Security: the cluster's certificate authority (:mod:`nodedb.security.ca`) and TLS on its
connections (:mod:`nodedb.security.tls`)."""
