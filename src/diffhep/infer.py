"""Statistical inference on HistFactory models in one namespace (like ``pyhf.infer``).

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep import infer
    >>> infer.hypotest is diffhep.stats.hypotest.hypotest
    True
"""

from .stats.fit import FitResult as FitResult
from .stats.fit import fit as fit
from .stats.fit import fixed_poi_fit as fixed_poi_fit
from .stats.fit import twice_nll as twice_nll
from .stats.hypotest import DiscoveryResult as DiscoveryResult
from .stats.hypotest import HypotestResult as HypotestResult
from .stats.hypotest import asimov_data as asimov_data
from .stats.hypotest import discovery as discovery
from .stats.hypotest import hypotest as hypotest
from .stats.hypotest import test_statistic as test_statistic
from .stats.limits import UpperLimit as UpperLimit
from .stats.limits import upper_limit as upper_limit
from .stats.uncertainties import covariance as covariance
from .stats.uncertainties import fisher_information as fisher_information
from .stats.uncertainties import hessian as hessian
