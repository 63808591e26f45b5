from twisted.application.service import ServiceMaker

nodedb = ServiceMaker(
    "nodedb",
    "nodedb.tap",
    "A nodedb node: a distributed record store that pools the disks and CPUs of many hosts",
    "nodedb",
)
