"""The landscape of a space: the 2-D picture (``maps``, drawn by ``plots``) and behaviour clusters
(``clusters``). Both read the stored vectors of the active encoder version."""

from metaspace.landscape.clusters import ClusterResult, ClusterSummary, choose_k, cluster
from metaspace.landscape.maps import MapResult, map_space, project

__all__ = ["ClusterResult", "ClusterSummary", "choose_k", "cluster", "map_space", "MapResult", "project"]
