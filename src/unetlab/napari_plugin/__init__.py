"""The napari plugin of unetlab (npe2 manifest ``napari.yaml``; widgets in
:mod:`unetlab.napari_plugin.widgets`). Needs the ``napari`` extra."""
