from geoseg.cli import main

main()
