from imagesvc.server.app import main

main()
