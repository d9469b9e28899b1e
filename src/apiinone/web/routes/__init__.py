"""Route modules, each an APIRouter mounted by ``create_app``."""
