from shvya_scheduler.app import main

main()
