"""Reading order of the gallery (sphinx-gallery's ``within_subsection_order``, named by string in conf.py).

A plain module, not a class defined in conf.py, so that Sphinx can pickle the configuration.
"""

ORDER = [
    "plot_quickstart.py",
    "plot_image_folder.py",
    "plot_binary_search_index.py",
    "plot_gpu_codes.py",
    "plot_grid_search.py",
    "plot_html_report.py",
]


class ReadingOrder:
    """Sort key: the examples in ORDER first, in that order; any other one after them, by file name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        return (ORDER.index(filename), "") if filename in ORDER else (len(ORDER), filename)
